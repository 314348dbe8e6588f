"""`python -m agent run --bundle FILE`: the agent without the `edgefleet` console script."""

from agent.cli import app

if __name__ == "__main__":
    app()
