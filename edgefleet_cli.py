"""The `edgefleet` command line (placeholder until the CLI lands)."""

from __future__ import annotations


def main() -> None:
    """Entry point of the `edgefleet` console script."""
    from hub.cli import app  # noqa: PLC0415

    app()
