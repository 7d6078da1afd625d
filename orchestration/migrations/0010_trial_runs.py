# A version may be a trial of the draft ("try this draft"): numbered apart from the published
# versions, so the published numbers keep having no gaps. (0009_attempt_log is another
# branch's; the integrator puts this after it.)

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration", "0009_attempt_log"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="workflowversion",
            name="version_number_unique",
        ),
        migrations.AddField(
            model_name="workflowversion",
            name="trial",
            field=models.BooleanField(default=False),
        ),
        migrations.AddConstraint(
            model_name="workflowversion",
            constraint=models.UniqueConstraint(
                condition=models.Q(("trial", False)), fields=("workflow", "number"), name="version_number_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="workflowversion",
            constraint=models.UniqueConstraint(
                condition=models.Q(("trial", True)), fields=("workflow", "number"), name="trial_number_unique"
            ),
        ),
    ]
