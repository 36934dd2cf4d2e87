"""Bulk loading: import jobs from server-side folders, manifests and ZIPs; export and import of libraries."""
