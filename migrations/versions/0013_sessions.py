"""Browser sessions: the viewer's sign-in with an API key, stored as a hash of the cookie's
token with its key, creation, expiry and revocation.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 19:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'web_session',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('key_fk', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['key_fk'], ['api_key.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_hash'),
    )
    op.create_index('ix_web_session_key_fk', 'web_session', ['key_fk'])


def downgrade() -> None:
    op.drop_index('ix_web_session_key_fk', table_name='web_session')
    op.drop_table('web_session')
