import TorchPickle

extension MegatronReshard {
    /// The distributed optimizer's common state (its param groups; the tensors are sharded keys)
    /// grouped as Megatron-Core builds the optimizer for the target's expert parallelism. At EP 1
    /// every parameter is in one optimizer, saved as `{optimizer: {param_groups}, ...}`; once the
    /// routed experts are expert-parallel (EP > 1 clears their `allreduce` flag) Megatron-Core
    /// chains a dense and an expert optimizer, saved as `{0: dense, 1: expert}`, and
    /// ChainedOptimizer.load_state_dict wants one entry per optimizer. Each optimizer then finds
    /// its groups by their identifier keys (`is_expert_parallel`, `wd_mult`, ...), so the expert
    /// entry is the dense groups marked expert-parallel, and the way back keeps the dense entry.
    /// A common state of another shape (several model chunks) is left as it is; nil when unchanged.
    static func regroupingOptimizer(_ common: PickleValue, hasExperts: Bool, targetExpertParallel: Int) -> (PickleValue, String)? {
        guard hasExperts, case .dict(var entries) = common,
              let position = entries.firstIndex(where: { $0.key == .string("optimizer") }),
              case .dict(let optimizer) = entries[position].value else { return nil }
        let single = optimizer.contains { $0.key == .string("optimizer") }
        let chained = !optimizer.isEmpty && optimizer.allSatisfy { if case .int = $0.key { true } else { false } }
        if single && targetExpertParallel > 1 {
            guard let expert = markingExpertParallel(.dict(optimizer)) else { return nil }
            entries[position].value = .dict([(.int(0), .dict(optimizer)), (.int(1), expert)])
            return (.dict(entries), "optimizer param groups split into the dense and the expert optimizer Megatron-Core chains at ep \(targetExpertParallel)")
        }
        if chained && targetExpertParallel == 1 && optimizer.count == 2, let dense = optimizer.first(where: { $0.key == .int(0) })?.value {
            entries[position].value = dense
            return (.dict(entries), "optimizer param groups of the dense and the expert optimizer merged into the one Megatron-Core builds at ep 1")
        }
        return nil
    }

    /// The optimizer entry with every param group's `is_expert_parallel` set true.
    static func markingExpertParallel(_ optimizer: PickleValue) -> PickleValue? {
        guard case .dict(var entries) = optimizer, let position = entries.firstIndex(where: { $0.key == .string("optimizer") }),
              case .dict(var inner) = entries[position].value,
              let groupsAt = inner.firstIndex(where: { $0.key == .string("param_groups") }),
              case .list(let groups) = inner[groupsAt].value else { return nil }
        var marked: [PickleValue] = []
        for group in groups {
            guard case .dict(var fields) = group else { return nil }
            if let flag = fields.firstIndex(where: { $0.key == .string("is_expert_parallel") }) {
                fields[flag].value = .bool(true)
            } else {
                fields.append((.string("is_expert_parallel"), .bool(true)))
            }
            marked.append(.dict(fields))
        }
        inner[groupsAt].value = .list(marked)
        entries[position].value = .dict(inner)
        return .dict(entries)
    }
}
