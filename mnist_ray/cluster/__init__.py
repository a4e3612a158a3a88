"""The Ray cluster a job runs on: which one, how it is reached, the layout that fits it, stop signals."""
