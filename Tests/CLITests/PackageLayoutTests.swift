import Foundation
import XCTest

/// The layering README's Architecture section shows is what Package.swift and the sources
/// say: every target declares exactly the modules its files import, and only Kernels imports
/// the C kernels.
final class PackageLayoutTests: XCTestCase {
    /// Modules of the toolchain, imported without being declared.
    static let system: Set<String> = ["Foundation", "FoundationXML", "Glibc", "Darwin", "Dispatch", "XCTest"]

    func testDependenciesMatchImports() throws {
        let manifest = try String(contentsOf: Repo.root.appendingPathComponent("Package.swift"), encoding: .utf8)
        var checked = 0
        for (target, declared) in Self.declaredDependencies(manifest) {
            let dir = Repo.root.appendingPathComponent(target.hasSuffix("Tests") ? "Tests/\(target)" : "Sources/\(target)")
            guard let files = FileManager.default.enumerator(atPath: dir.path)?.compactMap({ $0 as? String })
                .filter({ $0.hasSuffix(".swift") }), !files.isEmpty else { continue }
            var imported = Set<String>()
            for f in files {
                let text = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
                for line in text.split(separator: "\n") where line.hasPrefix("import ") {
                    imported.insert(String(line.dropFirst("import ".count)).trimmingCharacters(in: .whitespaces))
                }
            }
            imported.subtract(Self.system)
            XCTAssertEqual(imported, declared, "\(target): imports vs Package.swift dependencies")
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 18, "every Swift target was found")
    }

    func testOnlyKernelsImportsTheCKernels() throws {
        let sources = Repo.root.appendingPathComponent("Sources")
        for f in FileManager.default.enumerator(atPath: sources.path)!.compactMap({ $0 as? String }) where f.hasSuffix(".swift") {
            let text = try String(contentsOf: sources.appendingPathComponent(f), encoding: .utf8)
            if text.contains("import CKernels") { XCTAssertTrue(f.hasPrefix("Kernels/"), "\(f) imports CKernels") }
            if text.contains("import CSignals") { XCTAssertEqual(f, "Training/Preemption.swift", "\(f) imports CSignals") }
        }
    }

    /// target name → the names in its `dependencies:` list (products by their name).
    static func declaredDependencies(_ manifest: String) -> [String: Set<String>] {
        var out: [String: Set<String>] = [:]
        let pattern = try! NSRegularExpression(
            pattern: #"\.(?:target|executableTarget|testTarget)\(name: "([A-Za-z]+)"(?:, dependencies: \[(.*?)\])?"#,
            options: [.dotMatchesLineSeparators])
        let ns = manifest as NSString
        for m in pattern.matches(in: manifest, range: NSRange(location: 0, length: ns.length)) {
            let name = ns.substring(with: m.range(at: 1))
            var deps = Set<String>()
            if m.range(at: 2).location != NSNotFound {
                let list = ns.substring(with: m.range(at: 2))
                let quoted = try! NSRegularExpression(pattern: #"(?:name: )?"([A-Za-z]+)""#)
                let ls = list as NSString
                for q in quoted.matches(in: list, range: NSRange(location: 0, length: ls.length)) {
                    let word = ls.substring(with: q.range(at: 1))
                    if word != "swift-argument-parser" { deps.insert(word) }
                }
            }
            out[name] = deps
        }
        return out
    }
}
