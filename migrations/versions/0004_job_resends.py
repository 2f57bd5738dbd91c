"""Jobs count the sweeper's re-sends, so the wait between re-sends doubles.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 04:20:30.339165
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resends', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('resends')
