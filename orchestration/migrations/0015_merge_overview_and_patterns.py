# Joins the overview branch (indexes, ticker passes) and the patterns branch (route, end, redo): both added a 0014.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('orchestration', '0014_overview_indexes_and_ticker_passes'),
        ('orchestration', '0014_step_route_end_and_redo'),
    ]

    operations = [
    ]
