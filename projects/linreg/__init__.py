"""Linear regression by gradient descent, checked against least squares."""
