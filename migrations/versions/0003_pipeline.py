"""Pipeline: routing rules (seeded with the defaults), job claims and heartbeats, addenda.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 03:08:13.240719
"""

from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    route_rule = op.create_table('route_rule',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('definition', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rule', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('engines', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('instance_uids', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('claim', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('timings', sa.JSON(), nullable=False, server_default='{}'))

    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.add_column(sa.Column('addendum_of', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_report_addendum_of', 'report', ['addendum_of'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('route_status', sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f('ix_study_route_status'), ['route_status'], unique=False)

    # Seed the default routing rules; admins edit them through PUT /api/v1/admin/routes.
    from app.pipeline.routing import DEFAULT_RULES

    op.bulk_insert(route_rule, [
        {"name": r.name, "priority": r.priority, "definition": r.to_dict(),
         "updated_at": datetime.now(UTC)} for r in DEFAULT_RULES])


def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_route_status'))
        batch_op.drop_column('route_status')

    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_constraint('fk_report_addendum_of', type_='foreignkey')
        batch_op.drop_column('addendum_of')

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('timings')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('claim')
        batch_op.drop_column('instance_uids')
        batch_op.drop_column('engines')
        batch_op.drop_column('rule')

    op.drop_table('route_rule')

