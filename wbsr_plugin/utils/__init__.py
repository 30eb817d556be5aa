"""Helpers of the whole package: compatibility fixes for basicsr 1.4.2, atomic files, registration."""
