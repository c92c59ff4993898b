"""From run directories to the paper's tables and figures: plan the grid, aggregate, select, plot.

The workflow's scripts are thin wrappers around these modules, so the logic is unit-tested.
"""
