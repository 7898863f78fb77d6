-- Version 2: pipelines and promotions, the audit trail, canary releases.

-- A release is `succeeded` (eligible to be current), `pending` (a socs build waiting for its
-- checks), `canary` (running beside the current one), `aborted` or `failed`. Why a release
-- ended as it did (a canary's reason and figures) is JSON in `outcome`.
ALTER TABLE releases ADD COLUMN outcome TEXT;

CREATE TABLE pipelines (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    required_checks TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE pipeline_couplings (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    app_id TEXT NOT NULL UNIQUE REFERENCES apps(id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A promotion is recorded `pending` before any target changes, then every target release is
-- written in one transaction together with `succeeded`; a pending one is resumed at start.
CREATE TABLE promotions (
    id TEXT PRIMARY KEY,
    pipeline_id TEXT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    source_app_id TEXT NOT NULL,
    source_release_id TEXT NOT NULL,
    source_version BIGINT NOT NULL,
    from_stage TEXT NOT NULL,
    to_stage TEXT NOT NULL,
    targets TEXT NOT NULL,
    state TEXT NOT NULL,
    results TEXT NOT NULL,
    error TEXT,
    user_email TEXT NOT NULL,
    token_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    token_id TEXT,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    app TEXT,
    space TEXT,
    status BIGINT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX audit_app ON audit (app);
CREATE INDEX audit_space ON audit (space);
CREATE INDEX audit_at ON audit (at);

CREATE TABLE canary_settings (
    app_id TEXT PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    enabled BIGINT NOT NULL,
    weight BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    period_secs BIGINT NOT NULL,
    min_requests BIGINT NOT NULL,
    sticky BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- At most one running canary per app; `promote_after` is the timer, kept here so that it
-- survives a restart.
CREATE TABLE canaries (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    release_id TEXT NOT NULL,
    stable_version BIGINT NOT NULL,
    canary_version BIGINT NOT NULL,
    weight BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    min_requests BIGINT NOT NULL,
    sticky BIGINT NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    promote_after BIGINT NOT NULL,
    finished_at BIGINT,
    reason TEXT,
    figures TEXT
);
CREATE INDEX canaries_app ON canaries (app_id, state);
