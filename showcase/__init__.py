"""The drawing showcase: draw a digit in the browser and see what a saved model predicts."""
