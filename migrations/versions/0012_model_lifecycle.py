"""Model version life cycle: validation runs, active and shadow assignments (site-wide or per
routing rule), per-job model runs and what signed reports say of them.

Versions active before this revision get a site-wide active assignment, so they stay active.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 19:10:00
"""

from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('study_fk', existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('notes', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('registered_by', sa.String(length=128), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'model_assignment',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('family', sa.String(length=64), nullable=False),
        sa.Column('rule', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=8), nullable=False),
        sa.Column('version_fk', sa.Integer(), nullable=True),
        sa.Column('replaces_fk', sa.Integer(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('started_by', sa.String(length=128), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_by', sa.String(length=128), nullable=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['version_fk'], ['model_version.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['replaces_fk'], ['model_assignment.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_model_assignment_open', 'model_assignment',
                    ['family', 'role', 'ended_at'])
    op.create_index('ix_model_assignment_version_fk', 'model_assignment', ['version_fk'])
    # one open assignment per family, role and rule: two administrators acting at once cannot
    # leave two active versions on one rule
    op.create_index('uq_model_assignment_open_one', 'model_assignment',
                    ['family', 'role', 'rule'], unique=True,
                    postgresql_where=sa.text('ended_at IS NULL'),
                    sqlite_where=sa.text('ended_at IS NULL'))
    op.create_table(
        'model_validation',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version_fk', sa.Integer(), nullable=False),
        sa.Column('job_fk', sa.Integer(), nullable=True),
        sa.Column('case', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('requested_by', sa.String(length=128), nullable=False),
        sa.Column('load_seconds', sa.Float(), nullable=True),
        sa.Column('run_seconds', sa.Float(), nullable=True),
        sa.Column('peak_memory_bytes', sa.BigInteger(), nullable=True),
        sa.Column('peak_gpu_bytes', sa.BigInteger(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('checks', sa.JSON(), nullable=False),
        sa.Column('summary', sa.JSON(), nullable=False),
        sa.Column('device', sa.String(length=32), nullable=False),
        sa.Column('worker', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['version_fk'], ['model_version.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['job_fk'], ['job.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_fk'),
    )
    op.create_index('ix_model_validation_version_fk', 'model_validation', ['version_fk'])
    op.create_table(
        'model_run',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_fk', sa.Integer(), nullable=False),
        sa.Column('version_fk', sa.Integer(), nullable=True),
        sa.Column('family', sa.String(length=64), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=8), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('run_seconds', sa.Float(), nullable=True),
        sa.Column('load_seconds', sa.Float(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('trained', sa.Boolean(), nullable=True),
        sa.Column('findings', sa.JSON(), nullable=False),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.Column('comparison', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_fk'], ['job.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['version_fk'], ['model_version.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_model_run_job_fk', 'model_run', ['job_fk'])
    op.create_index('ix_model_run_version_fk', 'model_run', ['version_fk'])
    op.create_index('ix_model_run_version', 'model_run', ['family', 'version'])
    op.create_table(
        'model_outcome',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('run_fk', sa.Integer(), nullable=False),
        sa.Column('report_version_fk', sa.Integer(), nullable=False),
        sa.Column('family', sa.String(length=64), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=8), nullable=False),
        sa.Column('edit_rate', sa.Float(), nullable=True),
        sa.Column('codes', sa.JSON(), nullable=False),
        sa.Column('method', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_fk'], ['model_run.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['report_version_fk'], ['report_version.id'],
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_fk', 'report_version_fk', name='uq_model_outcome_run_version'),
    )
    op.create_index('ix_model_outcome_run_fk', 'model_outcome', ['run_fk'])
    op.create_index('ix_model_outcome_report_version_fk', 'model_outcome',
                    ['report_version_fk'])

    bind = op.get_bind()
    now = datetime.now(UTC)
    bind.execute(sa.text("UPDATE model_version SET updated_at = created_at"))
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.alter_column('updated_at', existing_type=sa.DateTime(timezone=True),
                              nullable=False)
        batch_op.alter_column('notes', server_default=None)
        batch_op.alter_column('registered_by', server_default=None)
    # before the life cycle, "retired" only meant "replaced by a later activation"; now it is
    # final, so those versions become registered again (validate them to use them)
    bind.execute(sa.text(
        "UPDATE model_version SET status = 'registered', status_reason = 'replaced by a later "
        "activation before the model life cycle (migration 0012)' WHERE status = 'retired'"))
    active = bind.execute(sa.text(
        "SELECT id, family FROM model_version WHERE status = 'active'")).fetchall()
    assignments = sa.table('model_assignment', sa.column('family'), sa.column('rule'),
                           sa.column('role'), sa.column('version_fk'), sa.column('reason'),
                           sa.column('started_by'), sa.column('started_at'))
    if active:
        op.bulk_insert(assignments, [
            {"family": family, "rule": "", "role": "active", "version_fk": vid,
             "reason": "active before the model life cycle (migration 0012)",
             "started_by": "migration", "started_at": now} for vid, family in active])


def downgrade() -> None:
    op.drop_index('ix_model_outcome_report_version_fk', table_name='model_outcome')
    op.drop_index('ix_model_outcome_run_fk', table_name='model_outcome')
    op.drop_table('model_outcome')
    op.drop_index('ix_model_run_version', table_name='model_run')
    op.drop_index('ix_model_run_version_fk', table_name='model_run')
    op.drop_index('ix_model_run_job_fk', table_name='model_run')
    op.drop_table('model_run')
    op.drop_index('ix_model_validation_version_fk', table_name='model_validation')
    op.drop_table('model_validation')
    op.drop_index('ix_model_assignment_version_fk', table_name='model_assignment')
    op.drop_index('ix_model_assignment_open', table_name='model_assignment')
    op.drop_table('model_assignment')
    # statuses the older schema does not know fall back to what it had
    op.execute("UPDATE model_version SET status = 'registered' "
               "WHERE status IN ('validated', 'shadow', 'quarantined')")
    with op.batch_alter_table('model_version', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('registered_by')
        batch_op.drop_column('notes')
        batch_op.drop_column('status_reason')
    op.execute("DELETE FROM job WHERE study_fk IS NULL")
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.alter_column('study_fk', existing_type=sa.Integer(), nullable=False)
