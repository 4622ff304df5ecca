"""Every table of the state database, declared once on one `metadata` (SQLAlchemy Core).

`connectors.state.db.make_engine` creates them all; the stores (source_state, snapshots, backfill,
digest_flags, the OneDrive eTag store) import their tables from here. A new table is declared here
and nowhere else, so `create_all` always sees it. Portable types only (SQLite and Postgres).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


backfill_dates = sa.Table(
    "backfill_dates",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("open_deals", sa.Integer, nullable=True),
    sa.Column("flags", sa.Integer, nullable=True),
    sa.Column("wrote_workbook", sa.Boolean, nullable=False),
    sa.Column("output", sa.Text, nullable=True),  # where the workbook went (", " between destinations)
)


digest_flag_runs = sa.Table(
    "digest_flag_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("report", sa.String(200), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),  # JSON [[severity, rule], ...]: the label of each index
    sa.UniqueConstraint("report", "as_of", name="uq_digest_flag_runs_report_as_of"),
)


digest_flag_chunks = sa.Table(
    "digest_flag_chunks",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("start", sa.Integer, primary_key=True),  # position of the chunk's first flag in the run
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("hashes", sa.LargeBinary, nullable=False),  # int64 little-endian
    sa.Column("codes", sa.LargeBinary, nullable=False),  # zlib of int16 little-endian label indexes
    sa.Column("idents", sa.LargeBinary, nullable=False),  # zlib of texts, see pack_texts
    sa.Column("messages", sa.LargeBinary, nullable=False),
)


snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
)


snapshot_metrics = sa.Table(
    "snapshot_metrics",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("metric", sa.String(100), primary_key=True),
    sa.Column("value", sa.Float, nullable=True),  # NULL = empty metric
)


snapshot_deals = sa.Table(  # read only: how versions before issue 22 stored each snapshot's deals
    "snapshot_deals",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("deal_id", sa.String(500), primary_key=True),
    sa.Column("owner", sa.String(500), nullable=True),
    sa.Column("product", sa.String(500), nullable=True),
    sa.Column("stage", sa.String(200), nullable=True),
    sa.Column("amount", sa.Float, nullable=True),
    sa.Column("close_date", sa.Date, nullable=True),
)


snapshot_deal_parts = sa.Table(  # the open deals of each snapshot, by change (connectors/state/snapshots.py)
    "snapshot_deal_parts",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True),  # 0, 1, ...: blocks of at most 250k deals
    sa.Column("kind", sa.String(8), nullable=False),  # "full": every open deal; "delta": changes since the date before
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # columnar, zlib (see snapshots.encode_deals)
    sa.Column("pushes", sa.LargeBinary, nullable=True),  # part 0: packed ids of deals pushed since the date before
)


snapshot_digests = sa.Table(  # a separate table, so state databases of earlier versions keep working
    "snapshot_digests",
    metadata,
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("deals_sha256", sa.String(64), nullable=False),
)


source_cursors = sa.Table(
    "source_cursors",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("cursor", sa.String(200), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


source_rates = sa.Table(  # the exchange rates a CRM source read last (for backfill and the stale fallback)
    "source_rates",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),  # JSON {base, origin, rates: [[currency, from | null, rate]]}
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


source_records = sa.Table(
    "source_records",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("record_id", sa.String(200), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),  # JSON object of raw values
)


source_field_history = sa.Table(  # issue 22: a source's close_date / amount history kept between runs (HubSpot)
    "source_field_history",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("record_id", sa.String(200), primary_key=True),
    sa.Column("entries", sa.Text, nullable=False),  # JSON [[changed_at, field, value], ...] oldest first
)


source_versions_table = sa.Table(
    "source_versions",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),  # changes whenever the source's rows would
    sa.Column("detail", sa.Text, nullable=False),  # JSON: what the connector needs to tell "unchanged"
)


onedrive_published = sa.Table(
    "onedrive_published",
    metadata,
    sa.Column("drive_id", sa.String(200), primary_key=True),
    sa.Column("path", sa.String(450), primary_key=True),  # lower-case: drive paths ignore case
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("etag", sa.String(200), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    # The content tag (cTag) of the upload; NULL in rows written before it was kept. Databases made
    # before this column existed get it from connectors.destinations.onedrive.upload (ALTER TABLE).
    sa.Column("ctag", sa.String(200), nullable=True),
)
