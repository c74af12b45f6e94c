//! kiln-firstboot: the apply engine (reused by `kiln bake`) and the first-boot command.
