"""Studies: reader study, cardiac risk and the model lab, built on the stages above."""
