"""deeplab_mobile"""
