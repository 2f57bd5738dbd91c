"""Known DICOM peers; API keys that belong to people; AI drafts proposed after an edit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dicom_peer',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('ae_title', sa.String(length=16), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('port', sa.Integer(), nullable=True),
        sa.Column('can_store', sa.Boolean(), nullable=False),
        sa.Column('can_query', sa.Boolean(), nullable=False),
        sa.Column('can_retrieve', sa.Boolean(), nullable=False),
        sa.Column('description', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('ae_title'),
    )
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('person_name', sa.String(length=128), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('person_id', sa.String(length=64), nullable=False,
                                      server_default=''))
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.add_column(sa.Column('proposed_version', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_column('proposed_version')
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('person_id')
        batch_op.drop_column('person_name')
    op.drop_table('dicom_peer')
