-- the second database, for Optuna's studies (the image creates `mlflow` itself)
CREATE DATABASE optuna OWNER tunelab;
