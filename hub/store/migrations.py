"""The schema, as sqlite-utils migrations: every change is one decorated function, applied once, in order."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Migrations

from fleet.histogram import N_BUCKETS

BUCKETS = [f"b{i}" for i in range(N_BUCKETS)]
migrations = Migrations("edgefleet-hub")


@migrations()
def m001_initial(db: Any) -> None:
    """Tables of the first release."""
    buckets = ", ".join(f"{b} INTEGER NOT NULL DEFAULT 0" for b in BUCKETS)
    db.executescript(
        f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE tokens (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            subject TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{{}}');
        CREATE INDEX events_ts ON events(ts);
        CREATE INDEX events_subject ON events(subject, ts);
        CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, manifest TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE TABLE model_versions (
            name TEXT NOT NULL, version TEXT NOT NULL, task TEXT NOT NULL,
            sha256 TEXT NOT NULL REFERENCES blobs(sha256), descriptor TEXT NOT NULL,
            created_at REAL NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (name, version));
        CREATE INDEX model_versions_sha ON model_versions(sha256);
        CREATE TABLE devices (
            id TEXT PRIMARY KEY, labels TEXT NOT NULL, password_hash TEXT NOT NULL,
            enrolled_at REAL NOT NULL, enrolled_by TEXT NOT NULL,
            status TEXT, status_at REAL, session TEXT, capabilities TEXT, last_seen REAL,
            telemetry_at REAL, last_requests INTEGER, last_errors INTEGER,
            desired_counter INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE desired (
            device_id TEXT PRIMARY KEY REFERENCES devices(id), version INTEGER NOT NULL,
            model_name TEXT, model_version TEXT, sha256 TEXT, body TEXT NOT NULL, envelope TEXT NOT NULL,
            issued_at REAL NOT NULL, expires_at REAL NOT NULL, rollout_id TEXT);
        CREATE INDEX desired_model ON desired(model_name, model_version);
        CREATE TABLE applied (
            device_id TEXT PRIMARY KEY REFERENCES devices(id), seq INTEGER NOT NULL, ts REAL NOT NULL,
            phase TEXT NOT NULL, received_at REAL NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE telemetry (
            id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
            start REAL NOT NULL, "end" REAL NOT NULL, received_at REAL NOT NULL,
            model TEXT NOT NULL, model_version TEXT NOT NULL, provider TEXT,
            requests INTEGER NOT NULL, errors INTEGER NOT NULL, sum_ms REAL NOT NULL, queue_depth INTEGER NOT NULL,
            cpu_percent REAL, memory_bytes INTEGER, spool_dropped INTEGER NOT NULL, spool_pending INTEGER NOT NULL,
            extra TEXT, {buckets});
        CREATE UNIQUE INDEX telemetry_dedupe ON telemetry(device_id, seq);
        CREATE TABLE telemetry_minute (
            minute REAL NOT NULL, device_id TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL,
            windows INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, sum_ms REAL NOT NULL,
            queue_depth_max INTEGER NOT NULL, {buckets},
            PRIMARY KEY (minute, device_id, model, model_version));
        CREATE INDEX telemetry_minute_model ON telemetry_minute(model, model_version, minute);
        CREATE INDEX telemetry_minute_device ON telemetry_minute(device_id, minute);
        CREATE TABLE documents (
            collection TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL, updated_at REAL NOT NULL,
            PRIMARY KEY (collection, key));
        """
    )


@migrations()
def m002_desired_envelope_only(db: Any) -> None:
    """A desired state is stored once, as the signed envelope published (its body was a second copy)."""
    db.execute("ALTER TABLE desired DROP COLUMN body")
