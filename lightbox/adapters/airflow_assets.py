"""The Airflow Assets that link the lightbox DAGs, each defined once.

Imported by every DAG file: an Asset is matched by its URI, so two definitions that drift apart would
silently unlink a producer from its consumers. Airflow is imported only here and in the DAG files.
"""

from airflow.sdk import Asset

# Updated by lightbox_data's last task (features in Feast); schedules lightbox_train.
FEATURES = Asset("lightbox://features/image_quality_v1")
# Updated when a version is promoted to the champion alias (lightbox_train, lightbox_promote).
CHAMPION = Asset("lightbox://models/champion")
# Updated by lightbox_monitor when a served version's predictions drifted from its test split; a
# retraining DAG can be scheduled on it (e.g. schedule=FEATURES | DRIFT).
DRIFT = Asset("lightbox://models/drift")
