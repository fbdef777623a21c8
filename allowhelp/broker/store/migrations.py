"""Schema versions of broker.sqlite3, applied in order when the store opens."""

from __future__ import annotations

# Each entry moves the schema from version N to N+1. Never edit a shipped entry:
# append a new one, because installed brokers have already run the old ones.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        full_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'technician')),
        password_hash TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf_token TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        remote TEXT NOT NULL
    );
    CREATE TABLE enrol_tokens (
        secret_hash TEXT PRIMARY KEY,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        uses_left INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        public_key TEXT NOT NULL UNIQUE,
        hostname TEXT NOT NULL,
        os TEXT NOT NULL,
        username TEXT NOT NULL,
        version TEXT NOT NULL,
        enrolled REAL NOT NULL,
        last_seen REAL,
        removed INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        technician TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('shell', 'screen')),
        reason TEXT NOT NULL,
        phrase TEXT NOT NULL,
        state TEXT NOT NULL,
        view_only INTEGER NOT NULL DEFAULT 0,
        help_code TEXT,
        created REAL NOT NULL,
        decided REAL,
        started REAL,
        ended REAL,
        end_reason TEXT,
        bytes_to_agent INTEGER NOT NULL DEFAULT 0,
        bytes_from_agent INTEGER NOT NULL DEFAULT 0,
        recording TEXT,
        recording_sha256 TEXT
    );
    CREATE INDEX sessions_by_technician ON sessions (technician, created);
    CREATE TABLE help_requests (
        code TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        message TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        session_id TEXT
    );
    """,
    """
    ALTER TABLE users ADD COLUMN totp_secret TEXT;
    ALTER TABLE users ADD COLUMN totp_pending TEXT;
    ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE recovery_codes (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        code_hash TEXT NOT NULL,
        PRIMARY KEY (user_id, code_hash)
    );
    ALTER TABLE enrol_tokens ADD COLUMN revoked REAL;
    CREATE TABLE policy (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 4: the TOTP steps each user has used, not only the highest (a clock set
    # back no longer refuses fresh codes). users.totp_last_step stays, unread.
    """
    CREATE TABLE totp_used_steps (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        PRIMARY KEY (user_id, step)
    ) WITHOUT ROWID;
    INSERT INTO totp_used_steps (user_id, step)
        SELECT id, totp_last_step FROM users
        WHERE totp_secret IS NOT NULL AND totp_last_step > 0;
    """,
    # 5: every agent's connects and disconnects, bounded (store/fleet.py keeps
    # the last CONNECTIVITY_PER_AGENT per agent and CONNECTIVITY_DAYS days).
    # The audit chain keeps only what matters of them (docs/audit.md).
    """
    CREATE TABLE agent_connectivity (
        id INTEGER PRIMARY KEY,
        agent_id TEXT NOT NULL,
        ts REAL NOT NULL,
        event TEXT NOT NULL CHECK (event IN ('connected', 'disconnected')),
        remote TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX agent_connectivity_by_agent ON agent_connectivity (agent_id, id);
    CREATE INDEX agent_connectivity_by_time ON agent_connectivity (ts);
    """,
    # 6: sessions of kind admin-shell (a root shell from the machine service).
    # SQLite cannot change a CHECK constraint: the table is rebuilt, rows kept.
    """
    CREATE TABLE sessions_v6 (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        technician TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('shell', 'screen', 'admin-shell')),
        reason TEXT NOT NULL,
        phrase TEXT NOT NULL,
        state TEXT NOT NULL,
        view_only INTEGER NOT NULL DEFAULT 0,
        help_code TEXT,
        created REAL NOT NULL,
        decided REAL,
        started REAL,
        ended REAL,
        end_reason TEXT,
        bytes_to_agent INTEGER NOT NULL DEFAULT 0,
        bytes_from_agent INTEGER NOT NULL DEFAULT 0,
        recording TEXT,
        recording_sha256 TEXT
    );
    INSERT INTO sessions_v6 (id, agent_id, technician, kind, reason, phrase, state,
        view_only, help_code, created, decided, started, ended, end_reason,
        bytes_to_agent, bytes_from_agent, recording, recording_sha256)
    SELECT id, agent_id, technician, kind, reason, phrase, state,
        view_only, help_code, created, decided, started, ended, end_reason,
        bytes_to_agent, bytes_from_agent, recording, recording_sha256 FROM sessions;
    DROP TABLE sessions;
    ALTER TABLE sessions_v6 RENAME TO sessions;
    CREATE INDEX sessions_by_technician ON sessions (technician, created);
    """,
    # 7: files sessions, the ticket and notes of a session, its chat transcript,
    # its file transfers, and the outbox of session reports for the ticket system.
    """
    CREATE TABLE sessions_v7 (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        technician TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('shell', 'screen', 'admin-shell', 'files')),
        reason TEXT NOT NULL,
        phrase TEXT NOT NULL,
        state TEXT NOT NULL,
        view_only INTEGER NOT NULL DEFAULT 0,
        help_code TEXT,
        created REAL NOT NULL,
        decided REAL,
        started REAL,
        ended REAL,
        end_reason TEXT,
        bytes_to_agent INTEGER NOT NULL DEFAULT 0,
        bytes_from_agent INTEGER NOT NULL DEFAULT 0,
        recording TEXT,
        recording_sha256 TEXT,
        ticket TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO sessions_v7 (id, agent_id, technician, kind, reason, phrase, state,
        view_only, help_code, created, decided, started, ended, end_reason,
        bytes_to_agent, bytes_from_agent, recording, recording_sha256)
    SELECT id, agent_id, technician, kind, reason, phrase, state,
        view_only, help_code, created, decided, started, ended, end_reason,
        bytes_to_agent, bytes_from_agent, recording, recording_sha256 FROM sessions;
    DROP TABLE sessions;
    ALTER TABLE sessions_v7 RENAME TO sessions;
    CREATE INDEX sessions_by_technician ON sessions (technician, created);
    CREATE TABLE session_messages (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        ts REAL NOT NULL
    );
    CREATE INDEX session_messages_by_session ON session_messages (session_id, id);
    CREATE TABLE file_transfers (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        path TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('upload', 'download')),
        size INTEGER NOT NULL,
        sha256 TEXT,
        ok INTEGER NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        started REAL NOT NULL,
        ended REAL NOT NULL
    );
    CREATE INDEX file_transfers_by_session ON file_transfers (session_id, id);
    CREATE TABLE report_outbox (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL UNIQUE,
        body BLOB NOT NULL,
        created REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        delivered REAL
    );
    CREATE INDEX report_outbox_due ON report_outbox (delivered, next_attempt);
    """,
    # 8: fleet jobs (issue #20): each job, one result row per target PC, the
    # machines' groups, and what each machine service reports of itself.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        created_by TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('packages', 'script')),
        reason TEXT NOT NULL,
        script TEXT NOT NULL DEFAULT '',
        install TEXT NOT NULL DEFAULT '[]',
        remove TEXT NOT NULL DEFAULT '[]',
        timeout INTEGER NOT NULL,
        expires REAL NOT NULL,
        targets TEXT NOT NULL,
        approvals_needed INTEGER NOT NULL DEFAULT 0,
        approved_by TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX jobs_by_time ON jobs (created);
    CREATE TABLE job_results (
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        agent_id TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        output TEXT NOT NULL DEFAULT '',
        output_sha256 TEXT NOT NULL DEFAULT '',
        started REAL,
        finished REAL,
        PRIMARY KEY (job_id, agent_id)
    ) WITHOUT ROWID;
    CREATE INDEX job_results_waiting ON job_results (agent_id, state);
    CREATE TABLE agent_groups (
        agent_id TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (agent_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX agent_groups_by_name ON agent_groups (name);
    CREATE TABLE agent_inventory (
        agent_id TEXT PRIMARY KEY,
        inventory TEXT NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 9 (#21): the broker nodes sharing this database (one row per node, heartbeat),
    # which node runs each session (a restarted or dead node's sessions are ended by
    # the node that claims them) and which node holds each agent's tunnel.
    """
    CREATE TABLE broker_nodes (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        https TEXT NOT NULL,
        tunnel TEXT NOT NULL,
        started REAL NOT NULL,
        heartbeat REAL NOT NULL
    );
    CREATE TABLE session_nodes (
        session_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL
    );
    CREATE TABLE agent_nodes (
        agent_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        since REAL NOT NULL
    );
    """,
    # 10 (#21, routing): where each node takes the other nodes' relayed sessions
    # (``serve --node-listen``; node/relay_listener.py). A node without a row relays nothing.
    """
    CREATE TABLE node_peers (
        node_id TEXT PRIMARY KEY,
        address TEXT NOT NULL
    );
    """,
    # 11 (#21, routing): what each agent said in its hello (who is signed in, the
    # screen engine, the monitors), written by the node holding its tunnel, so the
    # other nodes list it as that node does (store/node_peers.py).
    """
    CREATE TABLE agent_live (
        agent_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        details TEXT NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # 12 (#19, the doorbell): sha256 of the key each agent's doorbell presents
    # (``POST /api/v1/agent/doorbell``); "" until its first ``doorbell.key``.
    """
    ALTER TABLE agents ADD COLUMN doorbell_hash TEXT NOT NULL DEFAULT '';
    """,
    # 13 (a review of fleet jobs): the broker's seal on each job as stored (its
    # tunnel key's signature, certs/jobsign.py): a job whose row was changed by anyone
    # without that key is never sent. Jobs made before it have none: never sent.
    """
    ALTER TABLE jobs ADD COLUMN seal TEXT NOT NULL DEFAULT '';
    """,
)
