"""How good a bundle is: evaluation on labelled films, thresholds, the HTML report and figures, the model card and
the comparison of runs."""
