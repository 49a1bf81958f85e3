"""Distributed data parallel showcase: a ResNet on CIFAR-10."""
