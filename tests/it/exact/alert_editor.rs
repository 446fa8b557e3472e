//! Alert rules created and edited in the dashboard, saved as `Alert` manifests.
