//! The configuration model: load, merge and validate hostgroups and layers.
