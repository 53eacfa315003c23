"""The showcase: draw a digit (or upload an image) in the browser and see what a saved model
predicts."""
