"""The shipped chest radiograph rules also run Libra (with the prior) as an optional engine.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00
"""

import json

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

OLD = ["technical", {"family": "promptmrg", "required": False}]
NEW = ["technical", {"family": "promptmrg", "required": False},
       {"family": "libra", "required": False}]
CXR_RULES = ("cxr-chest", "cxr-description", "cxr-view")


def _set_pipeline(old: list, new: list) -> None:
    # Only the shipped rules, and only while an administrator has not changed their pipeline.
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, name, definition FROM route_rule")).all()
    for row_id, name, definition in rows:
        data = json.loads(definition) if isinstance(definition, str) else dict(definition)
        if name in CXR_RULES and data.get("pipeline") == old:
            data["pipeline"] = new
            bind.execute(sa.text("UPDATE route_rule SET definition = :d WHERE id = :i")
                         .bindparams(sa.bindparam("d", type_=sa.JSON())), {"d": data, "i": row_id})


def upgrade() -> None:
    _set_pipeline(OLD, NEW)


def downgrade() -> None:
    _set_pipeline(NEW, OLD)
