"""Interactive questions (asks) on the job machinery; MedGate's own derived series.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False,
                                      server_default='analysis'))
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.add_column(sa.Column('derived', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    op.create_table(
        'ask',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_fk', sa.Integer(), nullable=False),
        sa.Column('job_fk', sa.Integer(), nullable=True),
        sa.Column('family', sa.String(length=64), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('trained', sa.Boolean(), nullable=False),
        sa.Column('instance_uid', sa.String(length=64), nullable=False),
        sa.Column('frame', sa.Integer(), nullable=True),
        sa.Column('prompt', sa.JSON(), nullable=False),
        sa.Column('asked_by', sa.String(length=128), nullable=False),
        sa.Column('answer', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['study_fk'], ['study.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['job_fk'], ['job.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_ask_study_fk', 'ask', ['study_fk'])
    op.create_index('ix_ask_job_fk', 'ask', ['job_fk'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_ask_job_fk', table_name='ask')
    op.drop_index('ix_ask_study_fk', table_name='ask')
    op.drop_table('ask')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('derived')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('kind')
