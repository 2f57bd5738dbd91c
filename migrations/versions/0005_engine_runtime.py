"""Engine runtime: model versions keep their weights manifest (size and sha256 of every file);
the default ECG rules run MERL as an optional engine.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:00:00
"""

import json

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

OLD = ["technical", "ecg-measure", "merl"]
NEW = ["technical", "ecg-measure", {"family": "merl", "required": False}]
ECG_RULES = ("ecg-waveform", "ecg-modality")


def _set_pipeline(old: list, new: list) -> None:
    # Only the shipped rules, and only while an administrator has not changed their pipeline.
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, name, definition FROM route_rule")).all()
    for row_id, name, definition in rows:
        data = json.loads(definition) if isinstance(definition, str) else dict(definition)
        if name in ECG_RULES and data.get("pipeline") == old:
            data["pipeline"] = new
            bind.execute(sa.text("UPDATE route_rule SET definition = :d WHERE id = :i")
                         .bindparams(sa.bindparam("d", type_=sa.JSON())), {"d": data, "i": row_id})


def upgrade() -> None:
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.add_column(sa.Column('manifest', sa.JSON(), nullable=True))
    _set_pipeline(OLD, NEW)


def downgrade() -> None:
    _set_pipeline(NEW, OLD)
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.drop_column('manifest')
