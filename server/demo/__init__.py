"""A whole federation on one machine: the demo command and the local cluster it runs."""
