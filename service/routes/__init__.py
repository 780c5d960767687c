"""One router per resource: detections, health, the model, metrics, the page and the API docs."""
