"""Read-only measurements of a model (calibration statistics, sensitivity, cost) that passes, search and auto share."""
