"""Reports: metrics of predictions, evaluation and comparison reports, sweep reports, figures, MLflow."""
