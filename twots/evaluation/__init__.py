"""Online replay of val/test, metrics, the evaluation of a saved model, figures and the raw-id remap."""
