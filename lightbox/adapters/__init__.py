"""Every side effect on an external system lives in one adapter module here (dvc, feast, mlflow, git)."""
