"""The prediction-serving mesh: frontend, selection service, model containers."""
