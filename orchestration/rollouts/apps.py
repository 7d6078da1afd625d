from __future__ import annotations

from django.apps import AppConfig


class RolloutsConfig(AppConfig):
    name = "orchestration.rollouts"
    label = "rollouts"
    verbose_name = "Rollouts"
