"""The shipped CT rule runs series assembly and quantification (ct-quant) and the CT assistant
(optional); the shipped slide rules run the slide pipeline (slide-quant).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 16:00:00
"""

import json

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

CHANGES = {  # rule name: (old pipeline, new pipeline)
    "ct": (["technical"],
           ["technical", "ct-quant", {"family": "ct-assistant", "required": False}]),
    "pathology-wsi": (["technical"], ["technical", "slide-quant"]),
    "pathology-sm": (["technical"], ["technical", "slide-quant"]),
}


def _set_pipelines(forward: bool) -> None:
    # Only the shipped rules, and only while an administrator has not changed their pipeline.
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, name, definition FROM route_rule")).all()
    for row_id, name, definition in rows:
        data = json.loads(definition) if isinstance(definition, str) else dict(definition)
        if name not in CHANGES:
            continue
        old, new = CHANGES[name] if forward else CHANGES[name][::-1]
        if data.get("pipeline") == old:
            data["pipeline"] = new
            bind.execute(sa.text("UPDATE route_rule SET definition = :d WHERE id = :i")
                         .bindparams(sa.bindparam("d", type_=sa.JSON())), {"d": data, "i": row_id})


def upgrade() -> None:
    _set_pipelines(True)


def downgrade() -> None:
    _set_pipelines(False)
