import Synchronization
import TensorCore

/// The scales a quantizing codes group computed, held for the groups of the same weight that
/// write its scale tensors, so they need not read the weight again (each read of a weight costs
/// as much as its quantization once the kernels are vectorized). A weight is known by its
/// moves and its quantization (the part aside). Each entry is taken by as many groups as the
/// weight has scale parts, then dropped; past `budget` bytes nothing more is held and a scale
/// group reads the weight itself, so memory stays bounded whatever the model.
final class ScaleBoard: Sendable {
    enum Scales: Sendable {
        case fp8([Float])
        case nvfp4(groups: [UInt8], second: Float)

        var byteCount: Int {
            switch self {
            case .fp8(let scales): scales.count * 4
            case .nvfp4(let groups, _): groups.count + 4
            }
        }
    }

    struct Key: Hashable, Sendable {
        let moves: [PlannedMove]
        let transform: ElementTransform
    }

    private struct State {
        var entries: [Key: (scales: Scales, uses: Int)] = [:]
        /// Takers that came before the post (they read the weight themselves): so many fewer uses.
        var missed: [Key: Int] = [:]
        var bytes = 0
    }

    private let state = Mutex(State())
    let budget: Int

    init(budget: Int = 64 << 20) { self.budget = budget }

    /// The key of `group`'s weight, its quantization's part set to the codes'.
    static func key(group: Int, of plan: ConversionPlan) -> Key? {
        let transform: ElementTransform
        switch plan.transform(group: group) {
        case .quantize(var quantization)?:
            quantization.part = .codes
            transform = .quantize(quantization)
        case .quantizeNVFP4(var quantization)?:
            quantization.part = .codes
            transform = .quantizeNVFP4(quantization)
        default:
            return nil
        }
        return Key(moves: Array(plan.moves(group: group)), transform: transform)
    }

    /// Holds `scales` for `uses` takers, if the budget allows.
    func post(_ scales: Scales, for key: Key, uses: Int) {
        state.withLock { state in
            let uses = uses - (state.missed.removeValue(forKey: key) ?? 0)
            guard uses > 0, state.entries[key] == nil, state.bytes + scales.byteCount <= budget else { return }
            state.entries[key] = (scales, uses)
            state.bytes += scales.byteCount
        }
    }

    /// The scales posted for `key`, if any (the last taker drops them); a miss is remembered so
    /// that a later post is not held for a taker that will not come.
    func take(_ key: Key) -> Scales? {
        state.withLock { state in
            guard var entry = state.entries[key] else {
                state.missed[key, default: 0] += 1
                return nil
            }
            entry.uses -= 1
            if entry.uses == 0 {
                state.entries[key] = nil
                state.bytes -= entry.scales.byteCount
            } else {
                state.entries[key] = entry
            }
            return entry.scales
        }
    }
}
