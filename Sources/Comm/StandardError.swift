#if canImport(Glibc)
import Glibc
#endif

/// Writes one line to standard error without buffering (the process may abort right after).
public func writeStandardError(_ line: String) {
    let s = line.hasSuffix("\n") ? line : line + "\n"
    _ = s.withCString { write(2, $0, strlen($0)) }
}
