// CoreDNS, the peer svcplane-dns is benchmarked against, built from its Go module.
module svcplane.dev/bench/coredns

go 1.26.0

require github.com/coredns/coredns v1.15.0
