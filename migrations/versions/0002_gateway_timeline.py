"""Gateway: the study timeline (received, complete, reopened, ...).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 03:03:27.952272
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('study_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['study_fk'], ['study.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('study_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_event_study_fk'), ['study_fk'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('study_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_event_study_fk'))

    op.drop_table('study_event')

