"""The Geo-R domain, free of Ray: geo math, gazetteer and Chain of Region, parsing, rewards,
metrics, configuration, model loading and MLflow helpers."""
