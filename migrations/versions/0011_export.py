"""Export destinations and deliveries (report versions as DICOM SR to PACS and archives).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 16:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'destination',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('ae_title', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('port', sa.Integer(), nullable=True),
        sa.Column('calling_ae', sa.String(length=16), nullable=False),
        sa.Column('url', sa.String(length=1024), nullable=False),
        sa.Column('headers', sa.JSON(), nullable=False),
        sa.Column('domains', sa.JSON(), nullable=False),
        sa.Column('states', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_table(
        'delivery',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_fk', sa.Integer(), nullable=True),
        sa.Column('report_fk', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('destination_fk', sa.Integer(), nullable=True),
        sa.Column('destination_name', sa.String(length=64), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
        sa.Column('status', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_fk'], ['job.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['report_fk'], ['report.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['destination_fk'], ['destination.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_delivery_report_fk', 'delivery', ['report_fk'])
    op.create_index('ix_delivery_job_fk', 'delivery', ['job_fk'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_delivery_job_fk', table_name='delivery')
    op.drop_index('ix_delivery_report_fk', table_name='delivery')
    op.drop_table('delivery')
    op.drop_table('destination')
