"""Scoring segmentations: metrics (mIoU, mVC), folder evaluation, reports and method comparison."""
