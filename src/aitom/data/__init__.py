"""Datasets and LightningDataModules: subtomograms on disk, simulated on the fly, tomogram tiles."""
