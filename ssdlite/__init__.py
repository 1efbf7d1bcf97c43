"""ssdlite"""
