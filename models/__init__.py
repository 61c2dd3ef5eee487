"""nn.Modules of the method (STANet / STANet+): encoders, fuse modules, classification nets, C-GCN, students. No I/O, no Ray."""
