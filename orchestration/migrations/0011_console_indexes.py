"""Indexes for the operations console at 100,000 runs (manage.py bench --only console).

Numbered 0011 beside the other branches' 0009 and 0010; it depends on 0008 only.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration", "0010_trial_runs"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["workflow", "created_at", "id"], name="run_workflow_time_idx"),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                fields=["workflow", "status", "created_at", "id"], name="run_workflow_status_time_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["status", "created_at", "id"], name="run_status_time_idx"),
        ),
        migrations.AddIndex(
            model_name="steprun",
            index=models.Index(
                condition=models.Q(("status", "waiting")), fields=["run"], name="steprun_waiting_idx"
            ),
        ),
        migrations.AddIndex(
            model_name="steprun",
            index=models.Index(
                condition=models.Q(("status__in", ["queued", "running", "retrying", "throttled"])),
                fields=["run"],
                name="steprun_moving_idx",
            ),
        ),
    ]
