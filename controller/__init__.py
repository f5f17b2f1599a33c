"""cmk-controller: keeps customer-managed keys on Azure Storage rotated, adopted and compliant."""
